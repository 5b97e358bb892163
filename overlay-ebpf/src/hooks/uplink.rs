//! TC ingress on the uplink: tunnel packets from registered nodes, with an
//! inner source of the sender's subnet, are decapsulated, replies get their
//! ServIP back, and the inner packet is
//! delivered into its instance. RTT probes from registered nodes pass up to
//! the agent. Packets to an exposed port of the node, and those a registered
//! gateway tunnels to the node's NSP, go to `north_south`. Packets for an
//! address of the overlay that are not tunnelled to the node are dropped
//! (`guard`). Everything else passes untouched.

use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_SHOT},
    macros::classifier,
    programs::TcContext,
};
use overlay_common::{PROBE_MARK, events::Hook, maps::Config, stats::Reason};

use crate::deliver;
use crate::events;
use crate::guard;
use crate::layout::{INNER_IP, INNER_L4, Ipv4, L4_OFF, Udp};
use crate::maps::{ENDPOINTS, config, count, stranger};
use crate::nat::{self, Reversed};
use crate::north_south;
use crate::packet::{self, read};
use crate::tunnel::{self, Port};

#[classifier]
pub fn uplink(ctx: TcContext) -> i32 {
    match try_uplink(&ctx) {
        Ok(Some((action, reason))) => {
            count(reason, ctx.len());
            events::drop_tc(&ctx, Hook::Uplink, reason);
            action
        }
        // Not a tunnel packet: the node's own traffic, not counted.
        Ok(None) => TC_ACT_OK,
        Err(reason) => {
            count(reason, ctx.len());
            events::drop_tc(&ctx, Hook::Uplink, reason);
            TC_ACT_SHOT
        }
    }
}

#[inline(always)]
fn try_uplink(ctx: &TcContext) -> Result<Option<(i32, Reason)>, Reason> {
    packet::pull(ctx);
    let (Some(cfg), Ok(Some(ip))) = (config(), packet::ipv4(ctx)) else {
        return Ok(None);
    };
    if !tunnel::to_node(cfg, &ip) {
        return guard::arriving(cfg, &ip).map(|()| None);
    }
    let Ok(udp) = read::<Udp, _>(ctx, L4_OFF) else {
        return Ok(None);
    };
    let Some(port) = tunnel::port(cfg, &ip, &udp) else {
        // Not a tunnel: an exposed service's port, or the node's own traffic.
        return north_south::forward_in(ctx, cfg, &ip, 0);
    };
    // From here on the packet is addressed to a tunnel port: it is ours to judge.
    if ip.is_fragment() {
        return Err(Reason::DropFragment);
    }
    let sender = tunnel::check_sender(port, ip.saddr).map_err(|r| stranger(ctx, r, ip.saddr))?;
    match port {
        Port::Nsp => north_south::decap_from_gateway(ctx, cfg, &ip).map(Some),
        Port::Ewp => from_peer(ctx, cfg, sender, ip.saddr).map(Some),
    }
}

/// A tunnel packet from registered node `sender`: an RTT probe passes up to
/// the agent; anything else whose inner source the sender may use is
/// decapsulated and goes to its destination.
#[inline(always)]
fn from_peer(
    ctx: &TcContext,
    cfg: &Config,
    sender: u32,
    ip_saddr: u32,
) -> Result<(i32, Reason), Reason> {
    if read::<u8, _>(ctx, INNER_IP)? == PROBE_MARK {
        return Ok((TC_ACT_OK, Reason::Probe));
    }
    let inner: Ipv4 = read(ctx, INNER_IP)?;
    if !inner.is_v4() {
        return Err(Reason::DropMalformed);
    }
    tunnel::check_inner(Port::Ewp, sender, inner.saddr, ip_saddr)?;
    let mut f = packet::flow(ctx, &inner, INNER_L4)?;
    tunnel::decap(ctx)?;
    if let Reversed::External { via } = nat::reverse_nat(ctx, &mut f, cfg.node_ip)? {
        return north_south::reply_out(ctx, cfg, &f, via);
    }
    // SAFETY: value copied out at once.
    let ep = unsafe { ENDPOINTS.get(f.daddr) }
        .copied()
        .ok_or(Reason::DropNoEndpoint)?;
    crate::guard::note_udp(&f, &ep);
    Ok((deliver::to_instance(ctx, &ep)?, Reason::Decap))
}
